"""`python -m op_classifier.cli`: the command, as repeat, the distributed search and training start it."""

from op_classifier.cli import main

main()
