"""_handles"""
