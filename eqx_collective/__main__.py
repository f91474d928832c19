"""`python -m eqx_collective`: the tour (`--help` for its options)."""

from .tour import main


raise SystemExit(main())
