"""python -m training.eval --items FILE (--predictions FILE | --reference) (see aggregate.py)."""

from training.eval.aggregate import main

main()
