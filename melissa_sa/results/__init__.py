"""The results file ``OUT/results.h5``: what it holds, how it is written, how it is read.

* :mod:`.schema`: the format tag, the statistics and their definitions, the
  errors;
* :mod:`.layout`: :class:`ResultsLayout` (the shapes of one study's file) and
  :class:`ParameterTable` (the design actually run);
* :mod:`.create`: the file created with every dataset at full size;
* :mod:`.writer`: the writer, serial or MPI, never gathered;
* :mod:`.reader`: :func:`open_results` and :class:`Results`.

``docs/results.md`` is the user's reference.
"""

from melissa_sa.results.create import create_results_file
from melissa_sa.results.layout import ParameterTable, ResultsLayout
from melissa_sa.results.reader import Results, open_results
from melissa_sa.results.schema import (
    AGGREGATED,
    CI_METHODS,
    COUNTS,
    DEFINITIONS,
    FORMAT,
    STATISTICS,
    ResultsFileError,
    ResultsWriteError,
)
from melissa_sa.results.writer import (
    FieldSlice,
    complete_results_file,
    write_field_slice,
    write_results,
    write_results_parallel,
)

__all__ = [
    "FORMAT", "STATISTICS", "AGGREGATED", "COUNTS", "DEFINITIONS", "CI_METHODS",
    "ResultsLayout", "ParameterTable", "FieldSlice",
    "ResultsFileError", "ResultsWriteError",
    "create_results_file", "write_field_slice", "complete_results_file",
    "write_results_parallel", "write_results",
    "Results", "open_results",
]
