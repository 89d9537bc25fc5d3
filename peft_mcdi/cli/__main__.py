"""``python -m peft_mcdi.cli`` (and ``accelerate launch -m peft_mcdi.cli``) runs the ``mcdi`` command."""

import sys

from peft_mcdi.cli.main import main


sys.exit(main())
