"""rankitect.space"""
