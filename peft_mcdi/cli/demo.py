"""`mcdi demo`: the web page of :mod:`peft_mcdi.demo` (Gradio), on this machine."""

from __future__ import annotations

import argparse

from peft_mcdi.demo import DEFAULT_GENERATOR, DEFAULT_HEAD_GENERATOR


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="a web page: type a task description and inputs, compare the adapted model with the base model",
        description="Serve a page where a task description becomes a generated adapter: its answers beside the base "
        "model's (told the task), the adapt() latency and the nearest training tasks; a vision tab classifies "
        "images with a head generated from a few labelled ones. Needs the demo extra "
        "(pip install 'peft_mcdi[demo]', part of `make setup`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--generator",
        default=DEFAULT_GENERATOR,
        metavar="ID_OR_PATH",
        help=f"a LoRA generator (default {DEFAULT_GENERATOR})",
    )
    p.add_argument(
        "--head-generator",
        default=DEFAULT_HEAD_GENERATOR,
        metavar="ID_OR_PATH",
        help=f"a head generator saved with its backbone, for the vision tab (default {DEFAULT_HEAD_GENERATOR}; "
        "'none': no vision tab)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from peft_mcdi.demo import TextDemo, VisionDemo, build_app

    vision = VisionDemo(args.head_generator) if args.head_generator != "none" else None
    app = build_app(TextDemo(args.generator), vision)
    print(f"serving the demo of {args.generator} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, show_api=False)
    return 0
