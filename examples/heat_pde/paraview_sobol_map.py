"""Render one Sobol' map of the heat example with ParaView (the README's picture).

    xvfb-run -a pvbatch examples/heat_pde/paraview_sobol_map.py \
        examples/heat_pde/study_out/results.xmf "temperature S1 T_left" 20 sobol_map.png

Arguments: results.xmf, the array, the time step, the PNG to write. Runs under
ParaView's own Python (``pvbatch``; headless through ``xvfb-run``).
"""

import sys

from paraview import simple

xmf, array, step, png = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
reader = simple.XDMFReader(FileNames=[xmf])
reader.UpdatePipelineInformation()
view = simple.CreateView("RenderView")
view.ViewSize = [560, 460]
view.OrientationAxesVisibility = 0
view.UseColorPaletteForBackground = 0
view.Background = [1, 1, 1]
view.ViewTime = step
display = simple.Show(reader, view)
simple.ColorBy(display, ("CELLS", array))
lut = simple.GetColorTransferFunction(array)
lut.ApplyPreset("Viridis (matplotlib)", True)
lut.RescaleTransferFunction(0.0, 1.0)
display.SetScalarBarVisibility(view, True)
bar = simple.GetScalarBar(lut, view)
bar.Title = f"{array}, time step {step:g}"
bar.ComponentTitle = ""
bar.TitleColor = bar.LabelColor = [0, 0, 0]
bar.WindowLocation = "Any Location"
bar.Orientation = "Vertical"
bar.Position = [0.84, 0.1]
bar.ScalarBarLength = 0.8
view.CameraPosition = [0.5, 0.5, 3]
view.CameraFocalPoint = [0.5, 0.5, 0]
view.CameraViewUp = [0, 1, 0]
view.ResetCamera()
view.CameraPosition = [0.58, 0.5, 3]
view.CameraFocalPoint = [0.58, 0.5, 0]
simple.Render(view)
simple.SaveScreenshot(png, view, ImageResolution=[560, 460])
