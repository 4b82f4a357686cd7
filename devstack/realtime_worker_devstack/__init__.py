"""A local stand-in for Supabase (REST, Storage, Realtime) and Gemini, for development and tests.

It binds to 127.0.0.1 only and is never a production path.
"""
