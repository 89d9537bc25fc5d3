"""Imported first by ``peft_mcdi``: library log noise that would bury the package's own messages.

peft imports bitsandbytes, whose CPU backend warns at import time that an optional speed-up kernel (the `kernels`
package) is missing. 4-bit layers work without it (docs/distributed.md says what it costs); the warning would
otherwise open every ``mcdi`` command and every one-line error message.
"""

import logging


logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
