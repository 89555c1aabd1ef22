"""The bottom layer, imported by methods, tasks, fitting, profiling, reporting and running alike, importing
none of them: run profiles and the run context, cells and the result store (atomic writes), failures,
provenance, and the feature operations (standardise, PCA) that methods and the fitting stage share."""
