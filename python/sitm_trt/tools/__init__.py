"""The command line (`sitm-trt`, `cli`) and the jobs behind its sub-commands that are not the library's core:
the benchmark (`bench`), ahead-of-time engine building (`build_engine`) and batch conversion on a cluster
(`batch`)."""
