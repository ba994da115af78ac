# the benchmarks' tables (`trainers.table.render`): numbers right-aligned, to 3 digits, whole from 100 on
TABLE_STYLE = {"align_right": True, "digits": 3, "whole_from": 100}
