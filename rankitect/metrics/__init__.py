"""rankitect.metrics"""
