//! Providers: the CI systems runscale reads demand from and registers runners with.
