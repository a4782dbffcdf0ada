"""python -m training.grounding --corpus DIR --out DIR (see driver.py)."""

from training.grounding.driver import main

main()
