"""What the Snakemake workflow calls: :mod:`.config` (+ ``config.schema.yaml``: validation and defaults),
:mod:`.plan` (every artifact's id and inputs; the input-key format), :mod:`.artifacts` (atomic folders,
manifests, code versions, build locks), :mod:`.resources` (each job's memory and time), :mod:`.checks` (before
any job starts), :mod:`.stages` (one function per rule) and :mod:`.housekeeping` (``--verify``, ``--delete``)."""
