"""The image model, by lenstronomy's roles: PSF, light profiles, lens deflection and rendering, arc visibility, image normalisation and radius maps."""
