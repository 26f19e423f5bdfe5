"""_replica"""
