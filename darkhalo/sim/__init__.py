"""Building the data sets: footprint, parent population, survey, HEALPix split, injection priors, injections, hard negatives, anchors."""
