"""alignlab.eval"""
