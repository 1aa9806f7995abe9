"""Every board, in the order the menu lists them. A new board is a module here and a line below."""

from __future__ import annotations

from . import agency, feedback, national, pipeline, province, security

BOARDS = [pipeline.BOARD, province.BOARD, agency.BOARD, feedback.BOARD, security.BOARD, national.BOARD]
