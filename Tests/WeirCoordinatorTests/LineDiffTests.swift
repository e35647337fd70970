import Testing
@testable import WeirCoordinator

@Suite struct LineDiffTests {
    @Test("a changed line: removed then added, with its line numbers, and three lines of context; far unchanged lines folded")
    func changedLine() {
        let old = (1...20).map { "line \($0)" }.joined(separator: "\n") + "\n"
        let new = old.replacingOccurrences(of: "line 10\n", with: "line ten\n")
        let diff = LineDiff(old: old, new: new)
        #expect(diff.added == 1 && diff.removed == 1)
        #expect(diff.unified == """
            @@ 6 unchanged lines @@
             line 7
             line 8
             line 9
            -line 10
            +line ten
             line 11
             line 12
             line 13
            @@ 7 unchanged lines @@
            """)
        let removed = diff.lines.first { $0.kind == .removed }, added = diff.lines.first { $0.kind == .added }
        #expect(removed?.old == 10 && removed?.new == nil)
        #expect(added?.new == 10 && added?.old == nil)
    }

    @Test("new and deleted documents, no change, and a change at either end")
    func edges() {
        #expect(LineDiff(old: "", new: "a\nb\n").unified == "+a\n+b")
        #expect(LineDiff(old: "a\nb", new: "").unified == "-a\n-b")
        #expect(LineDiff(old: "a\nb\n", new: "a\nb\n").isEmpty)
        #expect(LineDiff(old: "a\nb\n", new: "a\nb\n").lines.map(\.kind) == [.folded])
        #expect(LineDiff(old: "a\nb\nc", new: "x\nb\nc\nd").unified == "-a\n+x\n b\n c\n+d")
        // Lines that moved: what the other side lacks is removed and added, the rest kept in order.
        let moved = LineDiff(old: "a\nb\nc", new: "c\na\nb")
        #expect(moved.added == 1 && moved.removed == 1)
        #expect(moved.lines.filter { $0.kind == .same }.map(\.text) == ["a", "b"])
    }
}
