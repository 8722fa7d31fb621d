"""rankitect.callbacks"""
