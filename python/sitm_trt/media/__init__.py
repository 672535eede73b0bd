"""What goes in and comes out: image files (`io`), video (`video`: decode, frame loop, HEVC SEI, sinks), and the
colour and signal encodings (`transfer`: sRGB, PQ, HLG, BT.2020). docs/architecture.md has the data flow."""
