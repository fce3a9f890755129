! melissa-sa: Melissa's Fortran client API. Use it in the specification part
! of a program unit, next to MPI:
!
!     include "mpif.h"
!     include "melissa/api.f90"
!     ...
!     call melissa_init("temperature"//char(0), local_vect_size, MPI_COMM_WORLD)
!     call melissa_send("temperature"//char(0), u)       ! once per time step
!     call melissa_finalize()
!
! Field names are C strings: end them with char(0); a name that ends with a
! blank is refused (pass trim(name)//char(0)). With the mpi_f08 module, pass
! the integer handle: call melissa_init(name, n, comm%MPI_VAL).
! melissa_version() returns a C pointer to a NUL-terminated string
! (c_f_pointer it to read it).

integer, parameter :: MELISSA_COUPLING_NONE = 0
integer, parameter :: MELISSA_COUPLING_ZMQ = 1
integer, parameter :: MELISSA_COUPLING_MPI = 2
integer, parameter :: MELISSA_COUPLING_DEFAULT = MELISSA_COUPLING_ZMQ

interface
    subroutine melissa_init(field_name, local_vect_size, comm) bind(c, name = 'melissa_init_f')
        use iso_c_binding, only: c_int, c_char
        character(kind = c_char), dimension(*), intent(in) :: field_name
        integer(kind = c_int), intent(in) :: local_vect_size
        integer(kind = c_int), intent(in) :: comm
    end subroutine melissa_init

    subroutine melissa_send(field_name, send_vect) bind(c, name = 'melissa_send')
        use iso_c_binding, only: c_char, c_double
        character(kind = c_char), dimension(*), intent(in) :: field_name
        real(kind = c_double), dimension(*), intent(in) :: send_vect
    end subroutine melissa_send

    subroutine melissa_send_float(field_name, send_vect) bind(c, name = 'melissa_send_float')
        use iso_c_binding, only: c_char, c_float
        character(kind = c_char), dimension(*), intent(in) :: field_name
        real(kind = c_float), dimension(*), intent(in) :: send_vect
    end subroutine melissa_send_float

    subroutine melissa_init_no_mpi(field_name, vect_size) bind(c, name = 'melissa_init_no_mpi')
        use iso_c_binding, only: c_int, c_char
        character(kind = c_char), dimension(*), intent(in) :: field_name
        integer(kind = c_int), value, intent(in) :: vect_size
    end subroutine melissa_init_no_mpi

    subroutine melissa_send_no_mpi(field_name, send_vect) bind(c, name = 'melissa_send_no_mpi')
        use iso_c_binding, only: c_char, c_double
        character(kind = c_char), dimension(*), intent(in) :: field_name
        real(kind = c_double), dimension(*), intent(in) :: send_vect
    end subroutine melissa_send_no_mpi

    subroutine melissa_finalize() bind(c, name = 'melissa_finalize')
    end subroutine melissa_finalize

    function melissa_version() bind(c, name = 'melissa_version')
        use iso_c_binding, only: c_ptr
        type(c_ptr) :: melissa_version
    end function melissa_version
end interface
