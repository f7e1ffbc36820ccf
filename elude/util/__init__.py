"""What every layer shares: :mod:`.files` (atomic writes, safetensors arrays), :mod:`.progress` (logging and
progress of long stages), :mod:`.optional` (optional heavy libraries behind a check)."""
