"""alignlab.recipes"""
