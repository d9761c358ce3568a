"""alignlab.models"""
