"""rankitect.search"""
