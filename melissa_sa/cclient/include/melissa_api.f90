! melissa-sa: Melissa's Fortran client API (older include name).
include "melissa/api.f90"
