! The 2-D heat equation in Fortran, MPI-parallel by rows: a melissa-sa client
! using Melissa's Fortran include file, unchanged from a Melissa solver.
!
!     heat_f [--nx N] [--ny N] [--steps T] [--dt DT] [--split N0,N1] T0 T1 [T2 [T3 [T4]]]
!
! The same problem, scheme and operation order as examples/heat_pde_c/heat.c
! (and heat.py --scheme explicit): the fields are equal bit for bit when built
! without FMA contraction (-ffp-contract=off). --split takes two row counts
! (a two-rank run, as --split 2,5); by default rows are dealt as evenly as possible.
!
! Build: mpif90 -O2 -ffp-contract=off -I$PREFIX/include heat.f90 \
!            -L$PREFIX/lib -lmelissa -Wl,-rpath,$PREFIX/lib -o heat_f
program heat
    implicit none
    include "mpif.h"
    include "melissa/api.f90"

    integer :: ierr, rank, nprocs, nx, ny, steps, substeps, nrows, row0, r, i, j, t, s
    integer :: below, above, n_temps, iarg, split(2), local
    double precision :: dt, alpha, hx, hy, inv_h2, dts, rx, ry, c0, a, b, temps(5)
    double precision, allocatable :: u(:, :), un(:, :), values(:)
    integer, allocatable :: rows(:)
    character(len = 256) :: arg, val
    logical :: use_split

    call MPI_Init(ierr)
    call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
    call MPI_Comm_size(MPI_COMM_WORLD, nprocs, ierr)
    nx = 12
    ny = 7
    steps = 5
    dt = 1.0d-3
    alpha = 1.0d0
    n_temps = 0
    use_split = .false.
    iarg = 1
    do while (iarg <= command_argument_count())
        call get_command_argument(iarg, arg)
        if (arg(1:2) == '--') then
            call get_command_argument(iarg + 1, val)
            select case (trim(arg))
            case ('--nx')
                read (val, *) nx
            case ('--ny')
                read (val, *) ny
            case ('--steps')
                read (val, *) steps
            case ('--dt')
                read (val, *) dt
            case ('--split')
                read (val, *) split
                use_split = .true.
            case default
                if (rank == 0) write (0, *) 'heat_f: unknown option ', trim(arg)
                call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
            end select
            iarg = iarg + 2
        else
            n_temps = n_temps + 1
            if (n_temps > 5) call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
            read (arg, *) temps(n_temps)
            iarg = iarg + 1
        end if
    end do
    if (n_temps < 2) then
        if (rank == 0) write (0, *) 'heat_f: expected T0 and 1 to 4 wall temperatures'
        call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
    end if
    temps(n_temps + 1:5) = temps(n_temps)

    allocate (rows(0:nprocs - 1))
    if (use_split .and. nprocs == 2) then
        rows = split
    else
        do r = 0, nprocs - 1
            rows(r) = ny / nprocs
            if (r < mod(ny, nprocs)) rows(r) = rows(r) + 1
        end do
    end if
    nrows = rows(rank)
    row0 = sum(rows(0:rank - 1))
    local = nrows * nx

    hx = 1.0d0 / (nx + 1)
    hy = 1.0d0 / (ny + 1)
    inv_h2 = 1.0d0 / (hx * hx) + 1.0d0 / (hy * hy)
    substeps = max(1, ceiling(2.0d0 * alpha * dt * inv_h2 * (1.0d0 + 1.0d-12)))
    dts = dt / substeps
    rx = alpha * dts / (hx * hx)
    ry = alpha * dts / (hy * hy)
    c0 = 1.0d0 - 2.0d0 * rx - 2.0d0 * ry

    ! u(i, j): i = 0 and nx + 1 are the side walls, j = 0 and nrows + 1 halo or wall rows
    allocate (u(0:nx + 1, 0:nrows + 1), un(0:nx + 1, 0:nrows + 1), values(local))
    u = temps(1)
    u(0, :) = temps(2)
    u(nx + 1, :) = temps(3)
    if (rank == 0) u(1:nx, 0) = temps(4)
    if (rank == nprocs - 1) u(1:nx, nrows + 1) = temps(5)
    un = u
    below = rank - 1
    above = rank + 1
    if (rank == 0) below = MPI_PROC_NULL
    if (rank == nprocs - 1) above = MPI_PROC_NULL

    call melissa_init("temperature"//char(0), local, MPI_COMM_WORLD)
    do t = 1, steps
        do s = 1, substeps
            call MPI_Sendrecv(u(0, 1), nx + 2, MPI_DOUBLE_PRECISION, below, 1, &
                              u(0, nrows + 1), nx + 2, MPI_DOUBLE_PRECISION, above, 1, &
                              MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
            call MPI_Sendrecv(u(0, nrows), nx + 2, MPI_DOUBLE_PRECISION, above, 2, &
                              u(0, 0), nx + 2, MPI_DOUBLE_PRECISION, below, 2, &
                              MPI_COMM_WORLD, MPI_STATUS_IGNORE, ierr)
            do j = 1, nrows
                do i = 1, nx
                    a = (u(i - 1, j) + u(i + 1, j)) * rx
                    b = (u(i, j - 1) + u(i, j + 1)) * ry
                    un(i, j) = (a + b) + u(i, j) * c0
                end do
            end do
            u(1:nx, 1:nrows) = un(1:nx, 1:nrows)
        end do
        do j = 1, nrows
            values((j - 1) * nx + 1:j * nx) = u(1:nx, j)
        end do
        call melissa_send("temperature"//char(0), values)
    end do
    call melissa_finalize()
    call MPI_Finalize(ierr)
end program heat
