"""The tour of eqx_collective: brainstate's collective-operations tutorial, cell by
cell. Its code lives in `eqx_collective/tour.py` so that `python -m eqx_collective`
runs it from any installation; this script runs the same thing (`--help` for the
options)."""

from eqx_collective.tour import main


if __name__ == "__main__":
    raise SystemExit(main(prog="python examples/collective_tour.py"))
