"""Photometric redshifts from multi-band images (paper 002): PDFs, metrics, RAIL stages.

* :mod:`probcat.redshift.pdf` — the truncated Gaussian-mixture PDFs, their summaries and
  qp ensembles;
* :mod:`probcat.redshift.metrics` — bias, sigma_IQR, outliers, PIT statistics, CDE loss;
* :mod:`probcat.redshift.rail` — a RAIL informer/estimator pair (needs ``pz-rail-base``).
"""
