"""Scoring predictions against ground truth: DAVIS J&F and mIoU for masks, matting errors for alphas.

numpy and OpenCV only (no torch), so `reelmask eval` runs anywhere.
"""
