"""Running the network on frames: the pipeline (pre -> network -> post), the backends that run the network
(ONNX Runtime, PyTorch, TensorRT), the engine cache, tiling for frames larger than memory allows, and the
per-device stream/event/buffer module. docs/architecture.md has the data flow."""
