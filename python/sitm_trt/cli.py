"""The ``sitm-trt`` command: ``info`` and ``bench`` (``infer``, ``video`` and ``build-engine`` join with the runtime)."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from sitm_trt import kernels

    info = {"build": kernels.build_info()}
    count, err = kernels.extension().cuda_devices()
    info["cuda_devices"] = count if count else f"none ({err})"
    print(json.dumps(info, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="sitm-trt", description="Stack-based inverse tone mapping (LDR -> linear HDR).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="how sitm-trt was built and what it can use here")
    sub.add_parser("bench", help="benchmarks (sitm-trt bench -h)", add_help=False)
    if argv[:1] == ["bench"]:
        from sitm_trt import bench

        return bench.main(argv[1:])
    args = parser.parse_args(argv)
    return {"info": _cmd_info}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
