//! A fake GitLab (work in progress).
