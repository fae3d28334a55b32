"""The diagnosis catalog: one function per rule, grouped by what it reads.

``input`` (LC0xx, LC215: loader faults), ``config`` (LC1xx), ``weights`` (LC2xx) and ``base``
(LC25x, against ``--model``). :mod:`loracheck.rules.registry` is the one list of them all.
"""
