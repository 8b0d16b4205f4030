"""`python -m trainer [args]` trains; `python -m trainer eval [args]` evaluates only."""

import sys

from shared.extras import require_extra
from trainer.console import quiet_trl

require_extra("python -m trainer", "train")
quiet_trl()

from trainer.cli import eval_main, train_main  # noqa: E402 - needs the extra checked above

sys.argv[0] = "python -m trainer"  # argparse's usage lines name the program by it, not "__main__.py"
if len(sys.argv) > 1 and sys.argv[1] == "eval":
    sys.argv[0] += " eval"
    sys.exit(eval_main(sys.argv[2:]))
sys.exit(train_main(sys.argv[1:]))
