"""Command line: build a synthetic web, or serve one until interrupted.

    python -m pipeline.synthetic build runs/demo/web --set pool_size=500 --set noise.junk_image=0.1
    python -m pipeline.synthetic serve runs/demo/web --port 8000
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline.core.config import ConfigError, parse_override, set_path, validate
from pipeline.synthetic.config import SyntheticWebConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.synthetic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the web to OUT_DIR (a no-op if built with the same config)")
    build.add_argument("out_dir")
    build.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    serve = sub.add_parser("serve", help="serve a built web on 127.0.0.1 until Ctrl-C")
    serve.add_argument("out_dir")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "build":
        from pipeline.synthetic.web import build_web

        data: dict = {}
        try:
            for text in args.set:
                set_path(data, *parse_override(text), source="--set")
            cfg = validate(SyntheticWebConfig, data, "--set")
        except ConfigError as err:
            parser.error(str(err))
        t0 = time.monotonic()
        info = build_web(cfg, args.out_dir)
        print(json.dumps(info["counts"], indent=2))
        print(f"built {args.out_dir} in {time.monotonic() - t0:.1f}s")
        return 0

    from pipeline.synthetic.server import serve_web

    with serve_web(args.out_dir, port=args.port, workers=args.workers) as web:
        print(f"serving {args.out_dir} at {web.base_url} (host map {web.host_map}); Ctrl-C stops")
        try:
            while web.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
