"""(placeholder: implementation in progress)"""
