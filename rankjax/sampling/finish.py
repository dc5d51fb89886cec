"""Why a sample ended: the reasons every decoder of this package reports (one definition)."""

FINISH_STOP = "stop"  # the model emitted a stop token
FINISH_LENGTH = "length"  # max_new_tokens tokens without a stop token
