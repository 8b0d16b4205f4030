"""`python -m trainer [args]` trains; `python -m trainer eval [args]` evaluates only."""

import sys

from trainer.cli import eval_main, train_main

if len(sys.argv) > 1 and sys.argv[1] == "eval":
    sys.exit(eval_main(sys.argv[2:]))
sys.exit(train_main(sys.argv[1:]))
