"""alignlab.runtime"""
