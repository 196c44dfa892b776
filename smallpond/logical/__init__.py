"""The logical layer: datasets, nodes and plans. Pure descriptions; nothing here executes.

Importing this package never imports ``ray`` or any ``smallpond.execution`` module.
"""
