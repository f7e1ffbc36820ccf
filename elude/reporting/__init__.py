"""The report: :mod:`.summary` (summary.json and report.html, Table 2, the aggregate over seeds),
:mod:`.pages` (one page per unit, the index, plots, concept groups), :mod:`.study_tables` (Tables 3, 4, 5, 7),
:mod:`.ef_tables` (Table 6's EF axis, Figure 2), :mod:`.tables` (ranked HTML tables) and :mod:`.html` (what
every page shares)."""
