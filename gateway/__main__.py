"""python -m gateway == console-gateway."""

from gateway.cli import main

raise SystemExit(main())
