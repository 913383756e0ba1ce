"""Curvature models: linearizations of the residual function at a point."""

from trustls.models.base import CurvatureModel, Linearization
from trustls.models.gauss_newton import GaussNewtonModel

__all__ = ["CurvatureModel", "GaussNewtonModel", "Linearization"]
