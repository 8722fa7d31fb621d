"""rankitect.cli"""
