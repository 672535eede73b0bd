"""``python -m sitm_training.data {fetch,build,export,import-sice,verify,sources}``: the training data commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .camera import RESPONSE_KINDS, CameraConfig

log = logging.getLogger("sitm_training.data")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sitm_training.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fetch",
        help="download the Debian, npm and PyPI packages and extract the HDR files (checksummed) into the cache",
    )
    f.add_argument(
        "--cache", type=Path, default=None, help="cache folder (default $SITM_TRT_CACHE or ~/.cache/sitm-trt)"
    )
    f.add_argument("--update", action="store_true", help="run `apt-get update` first (needs root)")
    f.add_argument("--keep-debs", action="store_true", help="keep the downloaded .deb files in CACHE/debs")
    f.add_argument("--keep-packages", action="store_true",
                   help="keep the npm tarball, open3d-gui-data's .deb (or the PyPI wheel) in CACHE/registry")
    f.add_argument("--no-debian", action="store_true",
                   help="skip the Debian packages (apt-get); the open3d skyboxes then come from the PyPI wheel")
    f.add_argument("--no-npm", action="store_true", help="skip @pmndrs/assets (npm pack, 14 MB)")
    f.add_argument("--no-pypi", action="store_true",
                   help="never fetch the open3d wheel (pip download, 400 MB), the skyboxes' fallback where Debian's "
                        "open3d-gui-data (18 MB) cannot be fetched")
    f.add_argument(
        "--allow-unverified", action="store_true", help="use files whose checksum differs from the recorded one"
    )

    b = sub.add_parser("build", help="build a training data set (deterministic for a seed, resumable)")
    b.add_argument("--out", type=Path, required=True, help="output folder (manifest.json, train/, val/, test/)")
    b.add_argument("--n", type=int, default=3000, help="train + val samples (default 3000)")
    b.add_argument("--n-test", type=int, default=96, help="test samples from the held-out real sources (default 96)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument(
        "--size",
        type=int,
        default=320,
        help="stored side length in pixels (default 320, for random 256 crops; the paper uses 512)",
    )
    b.add_argument(
        "--real-fraction",
        type=float,
        default=0.5,
        help="share of train samples cut from real HDR sources (default 0.5)",
    )
    b.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of --n in the (procedural) val split (default 0.05)"
    )
    b.add_argument(
        "--n-val-real",
        type=int,
        default=96,
        help="val samples from the held-out real validation scenes, round-robin (default 96; 0: none)",
    )
    b.add_argument(
        "--holdout-response",
        nargs="+",
        default=[],
        metavar="KIND",
        choices=[k for k in RESPONSE_KINDS if k != "srgb"],
        help="response families the train split never uses (e.g. filmic); the real val samples then come in "
        "pairs of one view, shot with the exact sRGB curve and with a held-out family (docs/data.md)",
    )
    b.add_argument(
        "--responses",
        nargs="+",
        default=list(CameraConfig().responses),
        metavar="KIND",
        choices=list(RESPONSE_KINDS),
        help="response families the simulated cameras draw from (default: srgb gamma filmic emor; aces and "
        "hable are in no default; --holdout-response takes families out of the train split)",
    )
    b.add_argument("--ev-max", type=float, default=4.0, help="stack from -EV_MAX to +EV_MAX (default 4)")
    b.add_argument("--ev-step", type=float, default=1.0, help="stack step in EV (default 1)")
    b.add_argument(
        "--jpeg-prob", type=float, default=0.3, help="probability that a simulated camera saves JPEG (default 0.3)"
    )
    b.add_argument("--cache", type=Path, default=None, help="where `fetch` put the sources")
    b.add_argument("--no-debian", action="store_true", help="do not use the fetched Debian sources")
    b.add_argument("--no-registry", action="store_true",
                   help="do not use the decoded sources (npm @pmndrs/assets, the open3d skyboxes)")
    b.add_argument(
        "--exclude-unknown-license",
        action="store_true",
        help="keep sources whose license is unknown (open3d/*) out of the train split; they still feed val",
    )
    b.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="ID",
        help="leave out a fetched source by id or id prefix, e.g. qtcreator/ or open3d/ (repeatable)",
    )
    b.add_argument(
        "--hdr-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of .exr/.hdr photos (flat images; repeatable)",
    )
    b.add_argument(
        "--pano-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of equirectangular .exr/.hdr panoramas (repeatable)",
    )
    b.add_argument(
        "--test-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of .exr/.hdr photos held out for the test split (repeatable)",
    )
    b.add_argument(
        "--val-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of .exr/.hdr photos held out for the val split (repeatable; with --n-val-real)",
    )
    b.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    b.add_argument("--allow-unverified", action="store_true", help="use fetched files whose checksum differs")
    b.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("export", help="write a split as (LDR png, HDR exr) pairs for the evaluation")
    e.add_argument("--root", type=Path, required=True, help="a built data set")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--real-only", action="store_true", help="only the samples of real HDR sources")
    e.add_argument("--per-mode", type=int, default=None,
                   help="at most N samples of each exposure mode (clipping / under-exposed), drawn with --seed")
    e.add_argument("--seed", type=int, default=0, help="with --per-mode: the draw's seed")
    e.add_argument("--families", default="", metavar="A,B",
                   help="only the samples shot through these camera response families (e.g. filmic,hable)")

    i = sub.add_parser(
        "import-sice", help="convert SICE-style bracketed stacks (Debevec-merged HDR) into a built data set"
    )
    i.add_argument(
        "--root", type=Path, required=True, help="SICE folder (Dataset_Part1/<n>/<k>.JPG, Dataset_Part1/Label/<n>.JPG)"
    )
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--size", type=int, default=512, help="images resized to SIZE x SIZE (default 512, as the paper)")
    i.add_argument("--test-fraction", type=float, default=0.2, help="share of stacks (scenes) in the test split")
    i.add_argument("--val-fraction", type=float, default=0.05, help="share of stacks in the val split")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="check a built data set's files against its manifest")
    v.add_argument("--root", type=Path, required=True)

    s = sub.add_parser("sources", help="list the real HDR sources found in the cache")
    s.add_argument("--cache", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import importlib

    B = importlib.import_module(".build", __package__)  # the package's `build` attribute is the function
    from . import fetch as F
    from . import source_tables as T
    from .recipe import Recipe
    from .sources import HDRSource, scan_hdr_dir

    if args.command == "fetch":
        import time

        start = time.perf_counter()
        got: dict[str, Path] = {}
        failed = False
        steps = []
        if not args.no_debian:
            steps.append(lambda: F.fetch(args.cache, update=args.update, keep_debs=args.keep_debs,
                                         allow_unverified=args.allow_unverified))
        skip = {"npm": args.no_npm, "pypi": args.no_pypi, "debian": args.no_debian}
        keys = tuple(k for k, art in T.REGISTRY_ARTEFACTS.items() if not skip[art.registry])
        if keys:
            steps.append(lambda: F.fetch_registry(args.cache, artefacts=keys, keep=args.keep_packages,
                                                  allow_unverified=args.allow_unverified))
        for step in steps:  # one failing source does not stop the others
            try:
                got.update(step())
            except F.FetchError as err:
                log.error("%s", err)
                failed = True
        for sid, path in sorted(got.items()):
            print(f"{sid:32s} {path}")
        total = len(T.DEBIAN_FILES) + len(T.REGISTRY_FILES)
        print(f"{len(got)} of {total} HDR files in {(args.cache or F.default_cache_dir()) / 'hdr'} "
              f"({time.perf_counter() - start:.1f} s)")
        return 1 if failed else 0

    if args.command == "sources":
        found, missing = F.find_all_sources(args.cache)
        for src in found:
            license = src.license if src.license_known else f"{src.license} [--exclude-unknown-license]"
            print(f"{src.id:32s} {T.source_split(src.id):5s} {src.kind:9s} {license}")
        for sid, why in T.SKIPPED_SCENES.items():
            print(f"{sid:32s} -     skipped   {why}")
        if missing:
            print(f"missing: {', '.join(missing)} (run: python -m sitm_training.data fetch)")
        return 0

    if args.command == "build":
        from .stack import stack_evs

        sources: list[HDRSource] = []
        if not (args.no_debian and args.no_registry):
            found, missing = F.find_all_sources(args.cache, debian=not args.no_debian, registry=not args.no_registry,
                                                allow_unverified=args.allow_unverified)
            dropped = [f.id for f in found if any(f.id.startswith(x) for x in args.exclude)]
            if args.exclude_unknown_license:
                dropped += [f.id for f in found
                            if not f.license_known and T.source_split(f.id) == "train" and f.id not in dropped]
            if dropped:
                log.info("excluded: %s", ", ".join(dropped))
            sources += [f for f in found if f.id not in dropped]
            if missing:
                log.warning(
                    "fetched HDR sources missing: %s (run: python -m sitm_training.data fetch)", ", ".join(missing)
                )
        for kind, dirs, prefix in (
            ("image", args.hdr_dir, ""),
            ("panorama", args.pano_dir, ""),
            ("image", args.test_dir, "test/"),
            ("image", args.val_dir, "val/"),
        ):
            for d in dirs:
                found_user, rejected = scan_hdr_dir(d, kind)
                if rejected:
                    log.warning("%d files rejected in %s", len(rejected), d)
                sources += [
                    HDRSource(prefix + u.id, u.path, u.kind, u.license, u.weight, u.sha256) for u in found_user
                ]
        try:  # a bad recipe (ValueError) is reported like a failed build
            recipe = Recipe(
                seed=args.seed,
                n=args.n,
                n_test=args.n_test,
                size=args.size,
                val_fraction=args.val_fraction,
                n_val_real=args.n_val_real,
                holdout_responses=tuple(args.holdout_response),
                real_fraction=args.real_fraction,
                evs=stack_evs(args.ev_max, args.ev_step),
                camera=CameraConfig(jpeg_prob=args.jpeg_prob, responses=tuple(dict.fromkeys(args.responses))),
            )
            manifest = B.build(args.out, recipe, sources, workers=args.workers, progress=not args.no_progress)
        except (B.BuildError, ValueError, OSError) as err:
            log.error("%s", err)
            return 1
        n = len(manifest["samples"])
        info = manifest["build"]
        rate = info["generated"] / info["seconds"] if info["seconds"] > 0 and info["generated"] else None
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "counts": manifest["counts"],
                    "MiB": round(manifest["bytes"] / 2**20, 1),
                    "KiB_per_sample": round(manifest["bytes"] / max(n, 1) / 1024, 1),
                    "generated": info["generated"],
                    "seconds": info["seconds"],
                    "samples_per_s": round(rate, 2) if rate is not None else None,  # JSON has no NaN
                    "test_is_real": manifest["test_is_real"],
                    "val_has_real": manifest["val_has_real"],
                    "holdout_responses": list(recipe.holdout_responses),
                }
            )
        )
        return 0

    if args.command == "export":
        try:
            pairs = B.export_split(args.root, args.out, args.split, real_only=args.real_only,
                                   per_mode=args.per_mode, seed=args.seed,
                                   families=tuple(f.strip() for f in args.families.split(",") if f.strip()))
        except (ValueError, OSError) as err:  # a missing --root is a FileNotFoundError
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{len(pairs)} {args.split} pairs written to {args.out}")
        return 0

    if args.command == "import-sice":
        from .real import import_sice

        try:
            manifest = import_sice(
                args.root,
                args.out,
                args.size,
                args.test_fraction,
                args.val_fraction,
                args.seed,
                progress=not args.no_progress,
            )
        except (FileNotFoundError, ValueError) as err:
            log.error("%s", err)
            return 1
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "counts": manifest["counts"],
                    "rejected": len(manifest["rejected"]),
                    "MiB": round(manifest["bytes"] / 2**20, 1),
                }
            )
        )
        return 0

    if args.command == "verify":
        try:
            problems = B.verify(args.root)
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for p in problems:
            print(p)
        print("ok" if not problems else f"{len(problems)} problems")
        return 0 if not problems else 1
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
