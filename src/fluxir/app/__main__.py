"""``python -m fluxir.app``: serve the restoration web app (:mod:`fluxir.app`)."""

from __future__ import annotations

import logging

from fluxir.app import ProjectModels, build_app
from fluxir.parameters.config import cli_parser
from fluxir.parameters.validation import baselines_problems, raise_problems, restore_settings_problems


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser("python -m fluxir.app", "FluxIR restoration web app", "restore.steps=20")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    models = ProjectModels.from_kedro(args.project, args.env, args.params)
    raise_problems(restore_settings_problems(models.params) + baselines_problems(models.baselines), "the app")
    build_app(models).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
