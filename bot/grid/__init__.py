"""Ablation grids, the paper's tables as data: a grid file read and checked (spec.py), its runs
on disk (runs.py), the checks across its rows (checks.py), and the table it becomes
(table.py, columns.py, format.py) with its noise marks (noise.py) and curves (curves.py).
"""
